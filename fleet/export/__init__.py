"""fleet.export"""
