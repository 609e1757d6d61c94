"""nestor"""
