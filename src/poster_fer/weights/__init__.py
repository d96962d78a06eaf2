"""poster_fer.weights"""
