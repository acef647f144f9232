// Yamux module
