// The error shape and deadlines every layer uses.
@_exported import Basics
// The /dnsaddr resolver a host is configured with.
@_exported import DNS
// The resource manager's types (limits, scopes, errors, `DefaultsConfigurable`) are part of the
// host's API: a host user configures them without importing a second module.
@_exported import Resources
// The seams a host is configured with: transports and security protocols (to write one's own).
@_exported import Security
@_exported import Transport
