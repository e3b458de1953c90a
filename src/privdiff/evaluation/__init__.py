"""privdiff.evaluation"""
