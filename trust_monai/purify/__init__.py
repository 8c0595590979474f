"""trust_monai.purify"""
