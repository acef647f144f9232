// LibP2P module
