"""trust_monai.protect"""
