"""fleet.execute"""
