"""privdiff.cpsample"""
