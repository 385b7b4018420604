"""attnlab.stream"""
