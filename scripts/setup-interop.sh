#!/usr/bin/env bash
# Prepare the interop referees: Interop/.venv with the exact packages of
# Interop/requirements.txt (py-libp2p 0.8.1 and its dependencies), and the
# go-libp2p daemon (p2pd, go-libp2p v0.32.1) in Interop/.p2pd/.
#
#   scripts/setup-interop.sh        # idempotent; prints nothing and exits 0 on success
#
# Steps:
#   1. libgmp-dev (needed to build fastecdsa) and libsecp256k1-dev (the
#      library our secp256k1 keys load at run time; the package itself builds
#      without it) via apt-get if `dpkg -s` says they are missing (as root, or
#      with `sudo -n` if available).  Skipped on hosts without dpkg (e.g.
#      macOS: `brew install gmp secp256k1` yourself).
#   2. Interop/.venv via `python3 -m venv` if missing or broken
#      (override the interpreter with INTEROP_PYTHON=/path/to/python3.11+).
#   3. `pip install -r Interop/requirements.txt` only when requirements.txt
#      (or the interpreter) changed since the last successful install; the
#      stamp is Interop/.venv/.requirements.sha256.  When a previous install
#      exists with other requirements, the venv is rebuilt from scratch so it
#      never keeps stale packages.
#   4. Interop/.p2pd/p2pd and Interop/.p2pd/p2pd.proto: the go-libp2p daemon
#      (learning-at-home's fork of go-libp2p-daemon, built on go-libp2p v0.32.1,
#      go-yamux 4.0.1, go-libp2p-pubsub 0.10.0, go-libp2p-kad-dht 0.25.1; a
#      static linux/amd64 binary) and its control protocol, taken from the PyPI
#      wheel hivemind==1.1.12 with `pip download --no-deps` (hivemind itself is
#      never installed: it pulls in torch).  The wheel's sha256 and both files'
#      are pinned; once they are in place this step costs two hashes.  Linux
#      x86_64 only (elsewhere it fails: the go interop tests need it).  Both
#      files are gitignored (Interop/.gitignore): never commit them.
# On failure it prints what failed (with the command's output) to stderr and
# exits non-zero.  Concurrent runs are serialised with flock when available.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INTEROP="$ROOT/Interop"
VENV="$INTEROP/.venv"
REQ="$INTEROP/requirements.txt"
STAMP="$VENV/.requirements.sha256"
PYTHON="${INTEROP_PYTHON:-python3}"

fail() {
    echo "setup-interop: error: $*" >&2
    exit 1
}

# Run a command quietly; on failure show its output and stop.
# Usage: run <timeout-seconds> <hint or ""> cmd args...
run() {
    local limit="$1" hint="$2" out
    shift 2
    local tmo=()
    if command -v timeout >/dev/null 2>&1; then tmo=(timeout "$limit"); fi
    if ! out="$(${tmo[@]+"${tmo[@]}"} "$@" 2>&1)"; then
        {
            echo "setup-interop: error: command failed: $*"
            printf '%s\n' "$out" | tail -n 60
            if [ -n "$hint" ]; then echo "setup-interop: hint: $hint"; fi
        } >&2
        exit 1
    fi
}

[ -f "$REQ" ] || fail "missing $REQ"

# Serialise concurrent runs (e.g. several test processes starting at once).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$INTEROP/.setup-interop.lock"
    if ! flock -w 900 9; then fail "timed out waiting for another setup-interop run"; fi
fi

# 1. libgmp-dev, libsecp256k1-dev ---------------------------------------------
missing=()
if command -v dpkg >/dev/null 2>&1; then
    # iproute2: the ip command, for the tests that build network namespaces (mDNS, NATs);
    # iptables: the NATs of the reachability tests (masquerade between namespaces).
    for package in libgmp-dev libsecp256k1-dev iproute2 iptables; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
fi
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
            SUDO=(sudo -n)
        else
            fail "${missing[*]} not installed and we are not root (and passwordless sudo is not available); run: apt-get install ${missing[*]}"
        fi
    fi
    run 600 "" ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    run 900 "" ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# 2. venv ---------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found (set INTEROP_PYTHON)"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1; then
    fail "$PYTHON is $("$PYTHON" -V 2>&1); Python >= 3.11 is required (set INTEROP_PYTHON)"
fi

venv_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1
}

make_venv() {
    # A half-created venv left by a failed run is caught by venv_ok next time.
    rm -rf "$VENV"
    run 300 "on Debian/Ubuntu install python3-venv" "$PYTHON" -m venv "$VENV"
}

if ! venv_ok; then
    make_venv
    venv_ok || { rm -rf "$VENV"; fail "created $VENV but its python/pip does not work"; }
fi

# 3. requirements -------------------------------------------------------------
want="$("$VENV/bin/python" - "$REQ" <<'EOF'
import hashlib, sys
h = hashlib.sha256(open(sys.argv[1], "rb").read())
h.update(("\npython " + sys.version).encode())
print(h.hexdigest())
EOF
)"
have="$(cat "$STAMP" 2>/dev/null || true)"

if [ "$want" != "$have" ]; then
    if [ -n "$have" ]; then
        # Another set of requirements was installed before: start clean.
        make_venv
    fi
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONNOUSERSITE=1
    unset PIP_USER PIP_TARGET PIP_PREFIX PIP_REQUIRE_VIRTUALENV || true
    rm -f "$STAMP"
    run 1800 "if building fastecdsa failed: it needs a C compiler (gcc), the Python headers (python3-dev) and libgmp-dev" \
        "$VENV/bin/python" -m pip install --quiet --timeout 60 -r "$REQ"
    run 120 "" "$VENV/bin/python" -c 'import libp2p, trio, nacl, base58'
    printf '%s\n' "$want" >"$STAMP"
fi

# 4. go-libp2p daemon (p2pd) ---------------------------------------------------
P2PD_DIR="$INTEROP/.p2pd"
P2PD_WHEEL="hivemind-1.1.12-py3-none-manylinux2014_x86_64.whl"
P2PD_WHEEL_SHA256="acb8f0cf2cdb085259feb1c0a092c530f1953287cbfa4a1ab5e14e8c65359a2c"
P2PD_SHA256="42f8f48e62583b97cdba3c31439c08029fb2b9fc506b5bdd82c46b7cc1d279d8"
PROTO_SHA256="eea870ff58e0f125b644e4ce51828863ecb13be0ba65fe9325b73a8bad206f4f"

sha256_of() {
    "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1" 2>/dev/null || true
}

p2pd_ok() {
    [ -x "$P2PD_DIR/p2pd" ] && [ -f "$P2PD_DIR/p2pd.proto" ] &&
        [ "$(sha256_of "$P2PD_DIR/p2pd")" = "$P2PD_SHA256" ] &&
        [ "$(sha256_of "$P2PD_DIR/p2pd.proto")" = "$PROTO_SHA256" ]
}

if ! p2pd_ok; then
    case "$(uname -s)/$(uname -m)" in
        Linux/x86_64 | Linux/amd64) ;;
        *) fail "the go-libp2p interop referee (p2pd from hivemind==1.1.12) is a linux/amd64 binary; this host is $(uname -s)/$(uname -m)" ;;
    esac
    mkdir -p "$P2PD_DIR"
    tmp="$(mktemp -d "$P2PD_DIR/.download.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONNOUSERSITE=1
    run 600 "needs network access to PyPI (or a PIP_INDEX_URL mirror)" \
        "$VENV/bin/python" -m pip download --quiet --timeout 60 --no-deps hivemind==1.1.12 \
        --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 --implementation py \
        --dest "$tmp"
    [ -f "$tmp/$P2PD_WHEEL" ] || fail "pip download did not produce $P2PD_WHEEL (got: $(ls "$tmp"))"
    got="$(sha256_of "$tmp/$P2PD_WHEEL")"
    [ "$got" = "$P2PD_WHEEL_SHA256" ] || fail "$P2PD_WHEEL has sha256 $got, expected $P2PD_WHEEL_SHA256"
    run 120 "" "$VENV/bin/python" -c '
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for member, name in (("hivemind/hivemind_cli/p2pd", "p2pd"), ("hivemind/proto/p2pd.proto", "p2pd.proto")):
        with z.open(member) as src, open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
' "$tmp/$P2PD_WHEEL" "$tmp"
    chmod 0755 "$tmp/p2pd"
    # Rename into place, each file whole (a half-written p2pd never has the pinned hash).
    mv -f "$tmp/p2pd.proto" "$P2PD_DIR/p2pd.proto"
    mv -f "$tmp/p2pd" "$P2PD_DIR/p2pd"
    rm -rf "$tmp"
    trap - EXIT
    p2pd_ok || fail "extracted $P2PD_DIR/p2pd but it does not have the pinned sha256 $P2PD_SHA256"
    run 30 "" "$P2PD_DIR/p2pd" -help
fi

exit 0
