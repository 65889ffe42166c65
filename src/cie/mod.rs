//! Prisma Access CIE Third-Party Device-ID client: mutual TLS + `apiKey`, `cert:refresh`, `token:refresh`.
