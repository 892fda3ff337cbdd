"""What a node needs to be one of many: the bus between nodes, relayed clients, media on other
nodes, cascade legs, and the Redis store. A single node imports none of it."""
