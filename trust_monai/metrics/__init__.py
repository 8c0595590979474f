"""trust_monai.metrics"""
