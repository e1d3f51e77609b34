"""hrm_text.infer"""
