"""poster_fer.faces"""
