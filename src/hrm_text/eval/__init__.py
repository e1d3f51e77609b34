"""hrm_text.eval"""
