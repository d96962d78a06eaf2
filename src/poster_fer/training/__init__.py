"""poster_fer.training"""
