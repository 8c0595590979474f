"""trust_monai.losses"""
