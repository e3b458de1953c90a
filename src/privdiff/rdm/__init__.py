"""privdiff.rdm"""
