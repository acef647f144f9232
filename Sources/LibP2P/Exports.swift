// The resource manager's types (limits, scopes, errors, `DefaultsConfigurable`) are part of the
// host's API: a host user configures them without importing a second module.
@_exported import Resources
