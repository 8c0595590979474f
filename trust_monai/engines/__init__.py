"""trust_monai.engines"""
