"""fleet.maintenance"""
