"""fleet.controller"""
