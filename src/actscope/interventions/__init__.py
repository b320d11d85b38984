"""actscope.interventions"""
