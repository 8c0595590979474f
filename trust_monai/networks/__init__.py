"""trust_monai.networks"""
