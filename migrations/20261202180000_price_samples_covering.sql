-- `/v1/prices` reads the time and price of every sample in a range, for one configuration and
-- country or for all. With the price in the index as well, that read never visits the table:
-- over a week of a million-sample history, the table lookups were most of the query's time.
-- Same names, same leading columns: every other query keeps the index it used.
DROP INDEX price_samples_series;
CREATE INDEX price_samples_series ON price_samples (configuration, country, sampled_at, price_micros);
DROP INDEX price_samples_time;
CREATE INDEX price_samples_time ON price_samples (sampled_at, price_micros);
