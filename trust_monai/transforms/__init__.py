"""trust_monai.transforms"""
