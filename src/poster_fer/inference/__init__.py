"""poster_fer.inference"""
