"""actscope.cli"""
