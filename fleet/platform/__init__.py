"""fleet.platform"""
