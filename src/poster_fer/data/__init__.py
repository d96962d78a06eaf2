"""poster_fer.data"""
