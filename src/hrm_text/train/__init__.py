"""hrm_text.train"""
