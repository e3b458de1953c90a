"""privdiff.data"""
