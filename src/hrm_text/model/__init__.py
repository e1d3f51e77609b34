"""hrm_text.model"""
