"""trust_monai.certify"""
