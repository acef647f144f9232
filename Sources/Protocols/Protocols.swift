// Protocols module
