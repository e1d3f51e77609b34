"""hrm_text.data"""
