"""fleet.service"""
