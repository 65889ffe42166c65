//! Prisma Access CIE Third-Party Device-ID simulator (`certrotor sim cie`).
