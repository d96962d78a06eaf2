"""poster_fer.models"""
