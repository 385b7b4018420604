"""attnlab.diagnose"""
