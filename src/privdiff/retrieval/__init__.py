"""privdiff.retrieval"""
