//! Rows → messages: each column type published as JSON and CSV, parsed back and compared.
