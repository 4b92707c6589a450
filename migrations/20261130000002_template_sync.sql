-- `dklctl templates sync` loads the default templates of `templates/` into
-- `email_templates`, and must never silently overwrite a template an admin
-- changed in the database. It records the checksum of what it wrote; a row
-- whose content no longer has that checksum was changed since (or was never
-- written by sync), and is left alone unless the operator says --force.
ALTER TABLE email_templates ADD COLUMN synced_checksum TEXT;

COMMENT ON COLUMN email_templates.synced_checksum IS
    'md5 of subject, html_content, text_content and variables as `dklctl templates sync` last wrote them; NULL if sync never wrote the row.';

-- The same checksum, computed in SQL so sync and the database agree on it.
CREATE FUNCTION dkl_template_checksum(t email_templates) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT md5(concat_ws(E'\x1f', t.subject, t.html_content, coalesce(t.text_content, E'\x1e'), coalesce(t.variables::text, '')))
$$;
