"""service/mqtt"""
