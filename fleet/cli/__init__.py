"""fleet.cli"""
