"""fleet.observe"""
