"""privdiff.report"""
