"""fleet.store"""
