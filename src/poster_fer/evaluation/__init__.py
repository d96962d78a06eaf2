"""poster_fer.evaluation"""
