"""privdiff.accounting"""
