"""The networks the bundle trains: built from a plain definition that travels with the checkpoint."""
